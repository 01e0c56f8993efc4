//! Label selectors (`-l`/`--to-selector`, `selector` and `to_selectors` in JSON, NetworkFault
//! `selector`): the string form, and the JSON forms (a string or a map of labels).
//!
//! Properties: an accepted selector prints back to the same selector (Display/FromStr and
//! JSON); each of its keys and values follows the Kubernetes label syntax; matching never
//! panics and agrees with the requirements one by one; an error says "malformed label
//! selector".
#![no_main]

use std::collections::BTreeMap;

use fault_api::{Selector, selector::Requirement};
use fault_fuzz::{json_round_trip, round_trip, text};
use libfuzzer_sys::fuzz_target;

/// Labels built from the selector's own keys and values, so matching is exercised on hits.
fn label_sets(s: &Selector) -> Vec<BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    let mut first = BTreeMap::new();
    for r in s.requirements() {
        let (k, v) = match r {
            Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, v.clone()),
            Requirement::In(k, vs) | Requirement::NotIn(k, vs) => {
                (k, vs.first().cloned().unwrap_or_default())
            }
            Requirement::Exists(k) | Requirement::NotExists(k) => (k, String::new()),
        };
        all.insert(k.clone(), v.clone());
        first.entry(k.clone()).or_insert(v);
    }
    vec![BTreeMap::new(), all, first]
}

fn one(r: &Requirement, labels: &BTreeMap<String, String>) -> bool {
    match r {
        Requirement::Equals(k, v) => labels.get(k) == Some(v),
        Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
        Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
        Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
        Requirement::Exists(k) => labels.contains_key(k),
        Requirement::NotExists(k) => !labels.contains_key(k),
    }
}

fn check_label(key: &str, value: Option<&str>) {
    let ok_name = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
            && n.starts_with(|c: char| c.is_ascii_alphanumeric())
            && n.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    assert!(ok_name(name), "key {key:?} accepted");
    if let Some(v) = value {
        assert!(v.is_empty() || ok_name(v), "value {v:?} accepted");
    }
}

fn check(s: &Selector) {
    round_trip(s);
    json_round_trip(s);
    for r in s.requirements() {
        match r {
            Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => check_label(k, Some(v)),
            Requirement::In(k, vs) | Requirement::NotIn(k, vs) => {
                check_label(k, None);
                vs.iter().for_each(|v| check_label(k, Some(v)));
            }
            Requirement::Exists(k) | Requirement::NotExists(k) => check_label(k, None),
        }
    }
    for labels in label_sets(s) {
        let want = s.requirements().iter().all(|r| one(r, &labels));
        assert_eq!(s.matches(&labels), want, "{s} against {labels:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let t = text(data);
    match t.parse::<Selector>() {
        Ok(s) => check(&s),
        Err(e) => assert!(e.starts_with("malformed label selector"), "{t:?}: {e}"),
    }
    // The JSON forms: a string, or a map of labels (matchLabels).
    if let Ok(s) = serde_json::from_slice::<Selector>(data) {
        check(&s);
    }
});
