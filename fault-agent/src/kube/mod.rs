//! Cluster mode: the `NetworkFault` resource ([`crd`]), the node agent ([`node`]), the API and
//! its controller ([`api_mode`], [`backend`], [`controller`]).
pub mod api_mode;
pub mod backend;
pub mod controller;
pub mod crd;
pub mod netns;
pub mod node;
pub mod pods;

use kube::CustomResourceExt as _;

/// The CRD as YAML (what `deploy/crd.yaml` holds).
pub fn crd_yaml() -> String {
    let crd = crd::NetworkFault::crd();
    format!(
        "# Generated from fault-agent/src/kube/crd.rs by `fault-agent crd`; do not edit.\n{}",
        serde_yaml::to_string(&crd).unwrap_or_default()
    )
}
