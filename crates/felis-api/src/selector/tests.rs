use std::collections::BTreeMap;
use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(source: &str) -> Selector {
    match Selector::parse(source) {
        Ok(s) => s,
        Err(e) => panic!("{source:?}: {e}"),
    }
}

fn matches(source: &str, pairs: &[(&str, &str)]) -> bool {
    sel(source).matches(&labels(pairs))
}

fn err(source: &str) -> ParseError {
    match Selector::parse(source) {
        Ok(s) => panic!("{source:?} parsed as {s}"),
        Err(e) => e,
    }
}

#[test]
fn empty_and_whitespace_selectors_are_all() {
    assert!(sel("").is_all());
    assert!(sel("   \t\n").is_all());
    assert_eq!(sel(""), sel("all()"));
    assert!(matches("", &[]));
    assert!(matches("all()", &[("a", "b")]));
    assert_eq!(Selector::default(), Selector::all());
}

#[test]
fn not_all_matches_nothing() {
    assert!(!matches("!all()", &[]));
    assert!(!matches("!all()", &[("a", "b")]));
    assert_eq!(sel("!all()").to_string(), "!all()");
}

#[test]
fn equality_requires_the_label() {
    assert!(matches("role == 'db'", &[("role", "db")]));
    assert!(matches("role == \"db\"", &[("role", "db")]));
    assert!(!matches("role == 'db'", &[("role", "web")]));
    assert!(!matches("role == 'db'", &[]));
    assert!(matches("role == ''", &[("role", "")]));
    assert!(!matches("role == ''", &[]));
}

#[test]
fn inequality_is_true_when_label_absent() {
    assert!(matches("role != 'db'", &[]));
    assert!(matches("role != 'db'", &[("role", "web")]));
    assert!(!matches("role != 'db'", &[("role", "db")]));
}

#[test]
fn in_requires_the_label_and_not_in_accepts_absence() {
    let s = "env in {'prod', \"staging\"}";
    assert!(matches(s, &[("env", "prod")]));
    assert!(matches(s, &[("env", "staging")]));
    assert!(!matches(s, &[("env", "dev")]));
    assert!(!matches(s, &[]));
    let n = "env not in {'prod','staging'}";
    assert!(!matches(n, &[("env", "prod")]));
    assert!(matches(n, &[("env", "dev")]));
    assert!(matches(n, &[]));
}

#[test]
fn empty_sets() {
    assert!(!matches("env in {}", &[("env", "x")]));
    assert!(!matches("env in { }", &[]));
    assert!(matches("env not in {}", &[("env", "x")]));
    assert!(matches("env not in {}", &[]));
}

#[test]
fn large_in_set_uses_binary_search_correctly() {
    let values: Vec<String> = (0..50).map(|i| format!("'v{i}'")).collect();
    let s = sel(&format!("k in {{{}}}", values.join(",")));
    for i in 0..50 {
        assert!(s.matches(&labels(&[("k", &format!("v{i}"))])), "v{i}");
    }
    assert!(!s.matches(&labels(&[("k", "v50")])));
    assert!(!s.matches(&labels(&[("k", "")])));
}

#[test]
fn has_and_not_has() {
    assert!(matches("has(tier)", &[("tier", "")]));
    assert!(matches("has( tier )", &[("tier", "x")]));
    assert!(!matches("has(tier)", &[]));
    assert!(matches("!has(tier)", &[]));
    assert!(!matches("!has(tier)", &[("tier", "x")]));
}

#[test]
fn string_operators_require_the_label() {
    assert!(matches("name contains 'ell'", &[("name", "hello")]));
    assert!(!matches("name contains 'xyz'", &[("name", "hello")]));
    assert!(!matches("name contains ''", &[]));
    assert!(matches("name starts with 'he'", &[("name", "hello")]));
    assert!(!matches("name starts with 'lo'", &[("name", "hello")]));
    assert!(matches("name ends with 'lo'", &[("name", "hello")]));
    assert!(!matches("name ends with 'he'", &[("name", "hello")]));
    assert!(!matches("name starts with ''", &[]));
    assert!(!matches("name ends with ''", &[]));
    // Whitespace between the two words of an operator is free.
    assert!(matches("name   starts\twith 'h'", &[("name", "hello")]));
}

#[test]
fn multiple_negations_collapse() {
    assert_eq!(sel("!!has(a)"), sel("has(a)"));
    assert_eq!(sel("!!!has(a)"), sel("!has(a)"));
    assert_eq!(sel("! ! ! has(a)"), sel("!has(a)"));
    assert_eq!(sel("!(!has(a))"), sel("has(a)"));
    assert!(matches("!!a == 'x'", &[("a", "x")]));
}

#[test]
fn negation_binds_tighter_than_and_and_or() {
    // `!a == 'x' && b == 'y'` is `(!(a == 'x')) && b == 'y'`.
    let s = "!a == 'x' && b == 'y'";
    assert!(matches(s, &[("b", "y")]));
    assert!(!matches(s, &[("a", "x"), ("b", "y")]));
    assert!(!matches(s, &[]));
    let s = "!has(a) || has(b)";
    assert!(matches(s, &[]));
    assert!(matches(s, &[("a", "1"), ("b", "1")]));
    assert!(!matches(s, &[("a", "1")]));
}

#[test]
fn and_binds_tighter_than_or() {
    let s = "has(a) || has(b) && has(c)";
    assert!(matches(s, &[("a", "")]));
    assert!(!matches(s, &[("b", "")]));
    assert!(matches(s, &[("b", ""), ("c", "")]));
    assert_eq!(sel(s), sel("has(a) || (has(b) && has(c))"));
    let s = "(has(a) || has(b)) && has(c)";
    assert!(!matches(s, &[("a", "")]));
    assert!(matches(s, &[("a", ""), ("c", "")]));
}

#[test]
fn parentheses_and_negated_groups() {
    let s = "!(has(a) && has(b))";
    assert!(matches(s, &[("a", "")]));
    assert!(!matches(s, &[("a", ""), ("b", "")]));
    assert!(matches("((((has(a)))))", &[("a", "")]));
}

#[test]
fn global_matches_everything_and_is_detected() {
    assert!(matches("global()", &[]));
    assert!(sel("global()").is_global());
    assert!(sel("global( )").is_global());
    assert!(sel("global() && has(x)").is_global());
    assert!(!sel("has(x)").is_global());
    assert!(!sel("all()").is_global());
    assert!(!sel("global() || has(x)").is_global());
}

#[test]
fn whitespace_is_insignificant() {
    let a = sel("role=='db'&&has(tier)||env in{'a','b'}");
    let b = sel("  role ==  'db'  &&  has( tier )  ||  env  in  { 'a' , 'b' }  ");
    assert_eq!(a, b);
}

#[test]
fn label_characters_and_keyword_like_labels() {
    assert!(matches(
        "projectcalico.org/namespace == 'default'",
        &[("projectcalico.org/namespace", "default")]
    ));
    assert!(matches("a-b_c.d/e9 == 'x'", &[("a-b_c.d/e9", "x")]));
    // Operator words are only operators after a label.
    assert!(matches("in == 'x'", &[("in", "x")]));
    assert!(matches("contains contains 'x'", &[("contains", "axb")]));
    assert!(matches("has == 'x'", &[("has", "x")]));
    assert!(matches("all == 'x'", &[("all", "x")]));
    assert!(matches("index in {'x'}", &[("index", "x")]));
}

#[test]
fn label_length_limit_is_512() {
    let ok = "a".repeat(512);
    assert!(Selector::parse(&format!("has({ok})")).is_ok());
    let long = "a".repeat(513);
    let e = err(&format!("{long} == 'x'"));
    assert_eq!(e.column, 1);
    assert!(e.message.contains("512"), "{e}");
}

#[test]
fn strings_have_no_escapes_and_keep_the_other_quote() {
    assert!(matches("a == 'say \"hi\"'", &[("a", "say \"hi\"")]));
    assert!(matches("a == \"it's\"", &[("a", "it's")]));
    assert!(matches("a == 'x\\'", &[("a", "x\\")]));
    assert!(matches("a == 'héllo wörld'", &[("a", "héllo wörld")]));
}

#[test]
fn error_missing_string_points_at_end() {
    let e = err("role == ");
    assert_eq!(e.column, 9);
    assert_eq!(e.message, "expected a quoted string");
    let e = err("role ==");
    assert_eq!(e.column, 8);
    let e = err("role == db");
    assert_eq!(
        (e.column, e.message.as_str()),
        (9, "expected a quoted string")
    );
}

#[test]
fn error_columns() {
    let cases: &[(&str, usize, &str)] = &[
        ("role", 5, "expected an operator"),
        ("role = 'x'", 6, "expected an operator"),
        ("role === 'x'", 8, "expected a quoted string"),
        ("role == 'x", 9, "unterminated string"),
        ("role == 'x' &&", 15, "expected a label"),
        ("role == 'x' || ", 16, "expected a label"),
        ("role == 'x' role == 'y'", 13, "expected '&&', '||'"),
        ("role == 'x' & has(a)", 13, "expected '&&', '||'"),
        ("(has(a)", 8, "expected ')'"),
        ("has(a))", 7, "unexpected ')'"),
        ("has(a", 6, "expected ')'"),
        ("has()", 5, "expected a label"),
        ("all(x)", 5, "expected ')'"),
        ("env in 'a'", 8, "expected '{'"),
        ("env in {'a' 'b'}", 13, "expected ',' or '}'"),
        ("env in {'a',}", 13, "expected a quoted string"),
        ("env not 'a'", 9, "expected 'in' after 'not'"),
        ("env starts 'a'", 12, "expected 'with' after 'starts'"),
        ("env ends", 9, "expected 'with' after 'ends'"),
        ("#", 1, "expected a label"),
        ("!", 2, "expected a label"),
        ("é == 'x'", 1, "expected a label"),
        ("a == 'é' && #", 13, "expected a label"),
        ("()", 2, "expected a label"),
    ];
    for (source, column, message) in cases {
        let e = err(source);
        assert_eq!(e.column, *column, "{source:?}: {e}");
        assert!(e.message.starts_with(message), "{source:?}: {e}");
    }
}

#[test]
fn error_display_names_the_column() {
    assert_eq!(
        err("role == ").to_string(),
        "invalid selector at column 9: expected a quoted string"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!("{}has(a){}", "(".repeat(10_000), ")".repeat(10_000));
    let e = err(&deep);
    assert!(e.message.contains("nested"), "{e}");
    let ok = format!("{}has(a){}", "(".repeat(50), ")".repeat(50));
    assert!(matches(&ok, &[("a", "")]));
    let bangs = format!("{}has(a)", "!".repeat(10_001));
    assert!(matches(&bangs, &[]));
}

#[test]
fn display_is_canonical() {
    let cases: &[(&str, &str)] = &[
        ("", "all()"),
        ("role=='db'", "role == \"db\""),
        ("a == 'say \"hi\"'", "a == 'say \"hi\"'"),
        ("env in {'b','a','b'}", "env in {\"a\", \"b\"}"),
        ("env not in {}", "env not in {}"),
        ("(has(a) && has(b)) && has(c)", "has(a) && has(b) && has(c)"),
        ("has(a) || (has(b) || has(c))", "has(a) || has(b) || has(c)"),
        (
            "(has(a) || has(b)) && has(c)",
            "(has(a) || has(b)) && has(c)",
        ),
        ("has(a) || has(b) && has(c)", "has(a) || has(b) && has(c)"),
        ("!(has(a) || has(b))", "!(has(a) || has(b))"),
        ("! ! has(a)", "has(a)"),
        (
            "n starts  with 'x' && n ends with 'y' && n contains 'z'",
            "n starts with \"x\" && n ends with \"y\" && n contains \"z\"",
        ),
        ("global()", "global()"),
        ("a != 'b'", "a != \"b\""),
    ];
    for (source, canonical) in cases {
        let s = sel(source);
        assert_eq!(s.to_string(), *canonical, "{source:?}");
        assert_eq!(sel(canonical), s, "{source:?}");
    }
}

#[test]
fn label_keys_and_requirements() {
    let s = sel("role == 'db' && has(tier) && env in {'prod','staging'} && x != 'y' && !has(z)");
    assert_eq!(s.label_keys(), vec!["env", "role", "tier", "x", "z"]);
    assert_eq!(
        s.requirements(),
        vec![
            Requirement::OneOf {
                key: "role",
                values: vec!["db"]
            },
            Requirement::Present { key: "tier" },
            Requirement::OneOf {
                key: "env",
                values: vec!["prod", "staging"]
            },
        ]
    );
    assert_eq!(
        sel("has(a)").requirements(),
        vec![Requirement::Present { key: "a" }]
    );
    assert!(sel("has(a) || has(b)").requirements().is_empty());
    assert!(sel("all()").requirements().is_empty());
}

#[test]
fn serde_uses_the_string_form() {
    let s = sel("role=='db'");
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(json, "\"role == \\\"db\\\"\"");
    let back: Selector = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    let bad: Result<Selector, _> = serde_json::from_str("\"role ==\"");
    assert!(bad.unwrap_err().to_string().contains("column 8"));
    let parsed: Selector = "has(a)".parse().unwrap();
    assert_eq!(parsed, sel("has(a)"));
}

#[test]
fn hashmap_and_reference_labels() {
    let mut map = HashMap::new();
    map.insert("a".to_string(), "b".to_string());
    assert!(sel("a == 'b'").matches(&map));
    let by_ref: &HashMap<String, String> = &map;
    assert!(sel("a == 'b'").matches(&by_ref));
}

// ---- property tests ----

fn arb_label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("in".to_string()),
        Just("not".to_string()),
        Just("contains".to_string()),
        Just("has".to_string()),
        "[a-z]{1,3}",
        "[A-Za-z0-9_./-]{1,12}",
    ]
}

fn arb_value() -> impl Strategy<Value = String> {
    prop_oneof!["[a-c]{0,2}", "[^\"']{0,6}", "[^\"]{0,4}", "[^']{0,4}"]
}

fn quote(value: &str, prefer_single: bool) -> String {
    if value.contains('"') || (prefer_single && !value.contains('\'')) {
        format!("'{value}'")
    } else {
        format!("\"{value}\"")
    }
}

fn ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(""), Just(" "), Just("  "), Just("\t"), Just("\n")]
}

/// Random source text in the selector grammar, with random spacing and quoting.
fn arb_source() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("all()".to_string()),
        Just("global()".to_string()),
        (arb_label(), ws()).prop_map(|(l, w)| format!("has({w}{l}{w})")),
        (
            arb_label(),
            prop_oneof![
                Just("=="),
                Just("!="),
                Just("contains"),
                Just("starts with"),
                Just("ends with")
            ],
            arb_value(),
            any::<bool>(),
            ws()
        )
            .prop_map(|(l, op, v, q, w)| format!("{l} {op}{w} {}", quote(&v, q))),
        (
            arb_label(),
            any::<bool>(),
            prop::collection::vec((arb_value(), any::<bool>()), 0..4),
            ws()
        )
            .prop_map(|(l, neg, vs, w)| {
                let vs: Vec<String> = vs.iter().map(|(v, q)| quote(v, *q)).collect();
                let op = if neg { "not in" } else { "in" };
                format!("{l} {op}{w}{{{w}{}}}", vs.join(","))
            }),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            (inner.clone(), 1..4usize).prop_map(|(s, n)| format!("{}{s}", "!".repeat(n))),
            inner.clone().prop_map(|s| format!("( {s} )")),
            prop::collection::vec(inner.clone(), 2..4).prop_map(|v| v.join(" && ")),
            prop::collection::vec(inner, 2..4).prop_map(|v| v.join("||")),
        ]
    })
}

fn arb_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(arb_label(), arb_value(), 0..6)
}

proptest! {
    #[test]
    fn display_then_parse_round_trips(source in arb_source()) {
        let parsed = Selector::parse(&source);
        prop_assert!(parsed.is_ok(), "{source:?}: {parsed:?}");
        let s = parsed.unwrap();
        let canonical = s.to_string();
        let reparsed = Selector::parse(&canonical);
        prop_assert_eq!(reparsed.as_ref(), Ok(&s), "{:?} -> {:?}", source, canonical);
        prop_assert_eq!(reparsed.unwrap().to_string(), canonical);
    }

    #[test]
    fn canonical_form_evaluates_like_the_source(source in arb_source(), labels in arb_labels()) {
        let s = Selector::parse(&source).unwrap();
        let canonical = Selector::parse(&s.to_string()).unwrap();
        prop_assert_eq!(s.matches(&labels), canonical.matches(&labels));
        // De Morgan: a negated selector matches exactly the complement.
        let negated = Selector::parse(&format!("!({source})")).unwrap();
        prop_assert_eq!(negated.matches(&labels), !s.matches(&labels));
    }

    #[test]
    fn parse_never_panics_and_errors_point_inside(source in "\\PC{0,40}") {
        if let Err(e) = Selector::parse(&source) {
            prop_assert!(e.column >= 1 && e.column <= source.chars().count() + 1, "{e}");
        }
    }

    #[test]
    fn requirements_hold_for_every_match(source in arb_source(), labels in arb_labels()) {
        let s = Selector::parse(&source).unwrap();
        if s.matches(&labels) {
            for requirement in s.requirements() {
                match requirement {
                    Requirement::Present { key } => prop_assert!(labels.contains_key(key)),
                    Requirement::OneOf { key, values } => {
                        let value = labels.get(key).map(String::as_str);
                        prop_assert!(value.is_some_and(|v| values.contains(&v)));
                    }
                }
            }
        }
    }
}

fn arb_big_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(arb_label(), arb_value(), 0..40)
}

proptest! {
    #[test]
    fn btreemap_fast_paths_agree_with_hashmap(source in arb_source(), labels in arb_big_labels()) {
        let s = Selector::parse(&source).unwrap();
        let hashed: HashMap<String, String> = labels.clone().into_iter().collect();
        prop_assert_eq!(s.matches(&labels), s.matches(&hashed));
    }

    #[test]
    fn label_values_agree_with_get(
        keys in prop::collection::btree_set(arb_label(), 0..12),
        labels in arb_big_labels(),
    ) {
        let keys: Vec<Box<str>> = keys.into_iter().map(String::into_boxed_str).collect();
        let mut values = vec![Some("stale"); keys.len()];
        labels.label_values(&keys, &mut values);
        for (key, value) in keys.iter().zip(&values) {
            prop_assert_eq!(*value, labels.get(&**key).map(String::as_str));
            prop_assert_eq!(labels.label(key), labels.get(&**key).map(String::as_str));
        }
    }
}

#[test]
fn selectors_with_many_keys_evaluate_by_name() {
    let source = (0..12)
        .map(|i| format!("has(k{i})"))
        .collect::<Vec<_>>()
        .join(" && ");
    let s = sel(&source);
    assert_eq!(s.label_keys().len(), 12);
    let all: Vec<(String, String)> = (0..12).map(|i| (format!("k{i}"), String::new())).collect();
    let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert!(matches(&source, &pairs));
    assert!(!matches(&source, &pairs[1..]));
}
