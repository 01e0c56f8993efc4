//! Cluster mode: the `NetworkFault` resource ([`crd`]), the node agent ([`node`]), the API and
//! its controller ([`api_mode`], [`backend`], [`controller`], [`abort`]); the
//! `NetworkFaultSchedule` resource ([`schedule_crd`]) and its controller in the API pod
//! ([`schedules`]).
pub mod abort;
pub mod api_mode;
pub mod backend;
pub mod controller;
pub mod crd;
pub mod dry_run;
pub mod events;
pub mod kill_switch;
pub mod netns;
pub mod node;
pub mod pods;
pub mod preflight;
pub mod schedule_crd;
pub mod schedules;
pub mod schedules_api;
pub mod services;
pub mod verify;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt as _;

/// `null` out of every `enum` of a schema (`nullable: true` already allows it): schemars lists
/// it for optional enums, and API servers before 1.21 refuse a CRD whose enums contain null.
fn strip_null_enums(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::Array(e)) = m.get_mut("enum") {
                e.retain(|x| !x.is_null());
            }
            m.values_mut().for_each(strip_null_enums);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_null_enums),
        _ => {}
    }
}

/// A CRD with the nulls stripped from its enums (see [`strip_null_enums`]).
fn stripped(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let Ok(mut v) = serde_json::to_value(&crd) else {
        return crd;
    };
    strip_null_enums(&mut v);
    serde_json::from_value(v).unwrap_or(crd)
}

/// The `NetworkFault` CRD, as applied to clusters.
pub fn crd() -> CustomResourceDefinition {
    stripped(crd::NetworkFault::crd())
}

/// The `NetworkFaultSchedule` CRD, as applied to clusters.
pub fn schedule_crd() -> CustomResourceDefinition {
    stripped(schedule_crd::NetworkFaultSchedule::crd())
}

/// Both CRDs as one YAML stream (what `deploy/crd.yaml` holds).
pub fn crd_yaml() -> String {
    let mut out = String::from(
        "# Generated from fault-agent/src/kube/crd.rs and schedule_crd.rs by `fault-agent crd`; do not edit.\n",
    );
    for (i, crd) in [crd(), schedule_crd()].iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(crd).unwrap_or_default());
    }
    out
}
