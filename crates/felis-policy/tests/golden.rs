//! Golden files: `tests/golden/<case>/input.json` (a policy set and the local endpoints) →
//! `expected.json` (the compiled [`Program`]). Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p felis-policy --test golden` and review the diff like code.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::fs;
use std::path::Path;

use felis_policy::PolicySet;
use felis_policy::Program;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    local: Vec<String>,
    /// With a node: `compile_for_node` (the host side too).
    #[serde(default)]
    node: Option<String>,
    policy_set: PolicySet,
}

fn endpoint_key(endpoint: &felis_policy::Endpoint) -> String {
    match &endpoint.namespace {
        Some(ns) => format!("{ns}/{}", endpoint.name),
        None => endpoint.name.clone(),
    }
}

#[test]
fn compiled_programs_match_golden_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases = 0;
    for entry in fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        let input: Input =
            serde_json::from_str(&fs::read_to_string(dir.join("input.json")).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let set = input.policy_set;
        let local = set
            .endpoints
            .iter()
            .filter(|e| input.local.contains(&endpoint_key(e)));
        let program = match &input.node {
            Some(node) => set.compile_for_node(local, node),
            None => set.compile(local),
        };
        let actual = serde_json::to_string_pretty(&program).unwrap() + "\n";
        let expected_path = dir.join("expected.json");
        if update {
            fs::write(&expected_path, &actual).unwrap();
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with UPDATE_GOLDEN=1)",
                expected_path.display()
            )
        });
        assert_eq!(
            actual,
            expected,
            "{}: compiled program differs",
            dir.display()
        );
        let parsed: Program = serde_json::from_str(&expected).unwrap();
        assert_eq!(parsed, program);
        cases += 1;
    }
    assert!(cases > 0, "no golden cases under {}", root.display());
}
