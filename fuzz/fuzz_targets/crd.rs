//! `NetworkFault` objects as the watches deliver them (JSON), to the fault model.
//!
//! Properties: any object that deserializes converts without panicking; an error names a
//! `spec.` field in camelCase (a field of the CRD's schema); an accepted spec is in range
//! ([`fault_fuzz::check_spec_ranges`]) and survives the trip back to an object unchanged;
//! the recovery annotation and the status's times parse or are ignored, never panic.
#![no_main]

use std::sync::LazyLock;

use fault_agent::kube::crd::{NetworkFault, NetworkFaultSpec};
use fault_fuzz::{check_spec_ranges, head};
use libfuzzer_sys::fuzz_target;

/// The camelCase fields of the CRD's spec, from its schema.
static FIELDS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let schema = serde_json::to_value(schemars::schema_for!(NetworkFaultSpec)).unwrap();
    schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
});

fuzz_target!(|data: &[u8]| {
    let Ok(nf) = serde_json::from_slice::<NetworkFault>(data) else {
        return;
    };
    let _ = nf.recovered_at();
    let _ = nf.id();
    match nf.fault_spec() {
        Ok(s) => {
            check_spec_ranges(&s);
            assert_eq!(Some(&s.namespace), nf.metadata.namespace.as_ref());
            let mut back = nf.clone();
            back.spec = NetworkFaultSpec::from_fault_spec(&s);
            let again = back
                .fault_spec()
                .expect("an accepted spec, written back, is refused");
            assert_eq!(again, s, "the spec changed through its object");
        }
        Err(e) => {
            let rest = e.field.strip_prefix("spec.").unwrap_or_else(|| {
                panic!("error names {:?}, not a spec field: {}", e.field, e.message)
            });
            // `namespace` is the object's (metadata), `labels` its labels.
            assert!(
                FIELDS.iter().any(|f| f == head(rest))
                    || ["namespace", "labels"].contains(&head(rest)),
                "error names {:?}, not a field of the CRD: {}",
                e.field,
                e.message
            );
        }
    }
});
