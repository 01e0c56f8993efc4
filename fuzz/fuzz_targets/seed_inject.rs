//! The seed API's body (`POST /api/v1/faults/network/inject`): JSON to `InjectRequest`, then
//! to a [`FaultSpec`].
//!
//! Properties: every error names a field of the seed request (`partition_type`,
//! `parameters.delay_ms`...), never a native one the user did not write (`jitter`, `delay`);
//! a request that maps is a valid spec in range, of its mode's kind (networkpolicy: a
//! connection partition; chaos_mesh: degradations only), carrying the seed's labels, with
//! the request's percents and delays exactly.
#![no_main]

use fault_api::{
    FaultSpec, PartitionMode,
    seed::{InjectRequest, LABEL_API, LABEL_MODE, LABEL_PARTITION_TYPE, Mode},
};
use fault_fuzz::{check_spec_ranges, head};
use libfuzzer_sys::fuzz_target;

const TOP: &[&str] = &[
    "partition_type",
    "source",
    "target",
    "mode",
    "duration",
    "parameters",
];
const PARAMETERS: &[&str] = &[
    "namespace",
    "target_pod_prefix",
    "block_nats",
    "block_all_egress",
    "block_ingress",
    "block_specific_pods",
    "allow_namespaces",
    "packet_loss_percent",
    "delay_ms",
    "delay_jitter_ms",
    "bandwidth_limit",
    "corrupt_percent",
    "duplicate_percent",
    "target_nats",
    "target_specific_pods",
];

fn check_error(field: &str, message: &str) {
    let known = field == "body"
        || fault_fuzz::unknown_field_named(field, message)
        || match field.strip_prefix("parameters.") {
            Some(p) => PARAMETERS.contains(&head(p)),
            None => TOP.contains(&head(field)),
        };
    assert!(
        known,
        "error names {field:?}, not a field of the seed request: {message}"
    );
}

fn check_spec(req: &InjectRequest, s: &FaultSpec) {
    s.validate()
        .expect("to_spec returned a spec that does not validate");
    check_spec_ranges(s);
    assert_eq!(s.labels.get(LABEL_API).map(String::as_str), Some("seed"));
    assert_eq!(
        s.labels.get(LABEL_PARTITION_TYPE).map(String::as_str),
        Some(req.partition_type.as_str())
    );
    assert_eq!(
        s.labels.get(LABEL_MODE).map(String::as_str),
        Some(req.mode.as_str())
    );
    let p = &req.parameters;
    assert_eq!(s.pod_prefix.as_deref(), Some(p.target_pod_prefix.as_str()));
    match req.mode {
        Mode::Networkpolicy => assert_eq!(s.partition, Some(PartitionMode::Connections)),
        Mode::ChaosMesh => {
            assert_eq!(s.partition, None);
            let same = |given: Option<f64>, got: Option<fault_api::Percent>| match given {
                None | Some(0.0) => assert!(got.is_none()),
                Some(v) => assert_eq!(got.map(|g| g.value()), Some(v)),
            };
            same(p.packet_loss_percent, s.loss_percent);
            same(p.corrupt_percent, s.corrupt_percent);
            same(p.duplicate_percent, s.duplicate_percent);
            let ms = |given: Option<f64>, got: Option<fault_api::FaultDuration>| match given {
                None | Some(0.0) => assert!(got.is_none()),
                Some(v) => assert_eq!(got.map(|g| g.get().as_secs_f64() * 1000.0), Some(v)),
            };
            ms(p.delay_ms, s.delay);
            ms(p.delay_jitter_ms, s.jitter);
        }
    }
    if let Some(d) = req.duration {
        let got = s
            .duration
            .expect("a duration was dropped")
            .get()
            .as_secs_f64();
        assert!(
            (got - d).abs() <= 1e-6 * d.max(1.0),
            "duration {d} became {got}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let req = match InjectRequest::from_json(data) {
        Ok(r) => r,
        Err(e) => return check_error(&e.field, &e.message),
    };
    match req.to_spec() {
        Ok(s) => check_spec(&req, &s),
        Err(e) => check_error(&e.field, &e.message),
    }
});
