//! The native API's body (`POST /v1/faults`): JSON to [`FaultSpec`], then validation.
//!
//! Properties: an error names a field of the spec (or `body` when the text is not a JSON
//! object, or the unknown field it found); a parsed spec serializes to JSON that parses to the
//! same spec; a validated spec keeps every range ([`fault_fuzz::check_spec_ranges`]), goes
//! through a NetworkFault object and back unchanged, and compiles to kernel parameters in range.
#![no_main]

use std::sync::LazyLock;

use fault_agent::kube::crd::{NetworkFault, NetworkFaultSpec};
use fault_api::FaultSpec;
use fault_fuzz::{check_spec_ranges, known_field, spec_fields};
use libfuzzer_sys::fuzz_target;

static FIELDS: LazyLock<Vec<String>> = LazyLock::new(spec_fields);

fn check_error(field: &str, message: &str) {
    let names: Vec<&str> = FIELDS.iter().map(String::as_str).collect();
    assert!(
        known_field(field, message, &names),
        "error names {field:?}, not a field of the spec: {message}"
    );
    assert!(!message.is_empty(), "{field}: empty message");
}

/// The spec as a NetworkFault object and back (what the cluster API does with it).
fn through_crd(s: &FaultSpec) {
    let mut nf = NetworkFault::new("f", NetworkFaultSpec::from_fault_spec(s));
    nf.metadata.namespace = Some(s.namespace.clone());
    nf.metadata.labels = Some(s.labels.clone());
    let back = nf
        .fault_spec()
        .unwrap_or_else(|e| panic!("a valid spec is refused as a NetworkFault: {e}\n{s:?}"));
    assert_eq!(&back, s, "the spec changed through a NetworkFault");
}

fn check_params(s: &FaultSpec) {
    let p = fault_agent::compile::params(s, 1);
    assert!(p.loss_ppm <= 1_000_000 && p.corrupt_ppm <= 1_000_000 && p.duplicate_ppm <= 1_000_000);
    assert_eq!(p.loss_ppm == 0, s.loss_percent.is_none());
    assert_eq!(p.corrupt_ppm == 0, s.corrupt_percent.is_none());
    assert_eq!(p.duplicate_ppm == 0, s.duplicate_percent.is_none());
    assert_eq!(p.delay_ns == 0, s.delay.is_none());
    assert!(p.jitter_ns <= p.delay_ns);
    assert_eq!(p.rate_bytes_per_sec == 0, s.rate.is_none());
}

fuzz_target!(|data: &[u8]| {
    let spec = match FaultSpec::from_json(data) {
        Ok(s) => s,
        Err(e) => return check_error(&e.field, &e.message),
    };
    let json = serde_json::to_vec(&spec).expect("a spec serializes");
    let again = FaultSpec::from_json(&json).unwrap_or_else(|e| {
        panic!(
            "{spec:?} serializes to {}, which is refused: {e}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(again, spec, "{}", String::from_utf8_lossy(&json));
    match spec.validate() {
        Ok(()) => {
            check_spec_ranges(&spec);
            through_crd(&spec);
            check_params(&spec);
        }
        Err(e) => check_error(&e.field, &e.message),
    }
});
