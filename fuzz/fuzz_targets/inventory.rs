//! The single-host inventory file (YAML), `Inventory::parse`.
//!
//! Properties: an error names a field under `pods`; an accepted inventory has each pod in
//! exactly one place (a local `netns`, or another host's `node` with `ips`), valid names and
//! labels, no pod twice, and writes back to YAML that parses to the same inventory.
#![no_main]

use std::collections::BTreeSet;

use fault_agent::inventory::Inventory;
use fault_api::Selector;
use fault_fuzz::text;
use libfuzzer_sys::fuzz_target;

fn check(inv: &Inventory) {
    let mut seen = BTreeSet::new();
    for p in &inv.pods {
        assert!(
            seen.insert((&p.namespace, &p.name)),
            "{}/{} twice",
            p.namespace,
            p.name
        );
        fault_api::spec::check_namespace("namespace", &p.namespace).expect("namespace accepted");
        assert!(
            !p.name.is_empty() && p.name.len() <= 253,
            "name {:?}",
            p.name
        );
        Selector::from_labels(p.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .expect("labels accepted");
        match (&p.netns, &p.node) {
            (Some(ns), None) => {
                assert!(p.ips.is_empty());
                let path = p.netns_path().expect("a local pod has a netns path");
                assert!(path.is_absolute(), "{ns:?} -> {path:?}");
                assert!(!ns.is_empty());
            }
            (None, Some(node)) => {
                assert!(!p.ips.is_empty() && !node.is_empty());
                assert!(p.netns_path().is_none());
            }
            _ => panic!(
                "pod {}/{} accepted with netns {:?} and node {:?}",
                p.namespace, p.name, p.netns, p.node
            ),
        }
    }
    let yaml = serde_yaml::to_string(inv).expect("an inventory serializes");
    let back = Inventory::parse(&yaml)
        .unwrap_or_else(|e| panic!("{inv:?} writes as {yaml:?}, which is refused: {e}"));
    assert_eq!(&back, inv, "{yaml}");
}

fuzz_target!(|data: &[u8]| {
    let t = text(data);
    match Inventory::parse(&t) {
        Ok(inv) => check(&inv),
        Err(e) => assert!(
            e.field.starts_with("pods"),
            "error names {:?}: {}",
            e.field,
            e.message
        ),
    }
});
