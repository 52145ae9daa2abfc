//! Fuzzes the selector parser: never panics; whatever parses prints a canonical form that
//! parses back to the same selector and evaluates without panicking.
#![no_main]

use std::collections::BTreeMap;

use felis_api::selector::Selector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match Selector::parse(source) {
        Ok(selector) => {
            let canonical = selector.to_string();
            let reparsed = Selector::parse(&canonical);
            assert_eq!(
                reparsed.as_ref(),
                Ok(&selector),
                "{source:?} -> {canonical:?}"
            );
            let labels: BTreeMap<String, String> = [("a", "b"), ("role", "db")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into();
            let _ = selector.matches(&labels);
            let _ = selector.requirements();
        }
        Err(error) => {
            assert!(
                error.column >= 1 && error.column <= source.chars().count() + 1,
                "{error}"
            );
        }
    }
});
