//! Dry runs: what a fault would resolve to and which guards it would trip, as a
//! [`FaultPlan`], without applying anything. The standalone core adds the rule count its
//! compiler would install ([`crate::core::Core::plan`]); the cluster API plans per node.
use std::collections::BTreeMap;

use fault_api::{FaultPlan, FaultSpec, FieldError, PodRef, guards::NodePlan};

use crate::{
    blast,
    guards::{Guards, Verdict},
    pods::Pod,
    protect::Protection,
    resolve::{self, Resolution},
};

/// `field: message`, as a plan lists a refusal.
pub fn reason(e: &FieldError) -> String {
    format!("{}: {}", e.field, e.message)
}

/// The plan of `spec` against `pods` given the guards' `verdict` on it: the blast-radius
/// choice drawn now, the resolution among it, targets and peers per node (`""` for pods of
/// no known node). Also returns the resolution (for the rule count).
pub fn plan(
    spec: &FaultSpec,
    pods: &[Pod],
    verdict: &Verdict,
    guards: &Guards,
    protection: &Protection,
) -> (FaultPlan, Resolution) {
    let blast_radius = blast::choose(spec, &verdict.candidates, &mut blast::os_draw);
    let effective = guards.protection_for(spec, protection);
    let res = resolve::resolve_among(
        spec,
        pods,
        &effective,
        blast_radius.as_ref().map(|b| b.chosen.as_slice()),
    );
    let mut nodes: BTreeMap<String, NodePlan> = BTreeMap::new();
    let name = |p: &PodRef| format!("{}/{}", p.namespace, p.name);
    for t in &res.targets {
        let n = nodes.entry(t.node.clone().unwrap_or_default()).or_default();
        n.targets.push(name(t));
    }
    for p in &res.peers {
        let n = nodes.entry(p.node.clone().unwrap_or_default()).or_default();
        n.peers.push(name(p));
    }
    let peer_cidrs = if spec.all_peers() {
        vec![
            "0.0.0.0/0".parse().expect("literal"),
            "::/0".parse().expect("literal"),
        ]
    } else {
        spec.to_cidrs.clone()
    };
    let refusals: Vec<String> = verdict.refusals.iter().map(reason).collect();
    let mut warnings = verdict.notes.clone();
    warnings.extend(res.warnings.iter().cloned());
    let plan = FaultPlan {
        spec: spec.clone(),
        accepted: refusals.is_empty(),
        refusals,
        targets: res.targets.clone(),
        peers: res.peers.clone(),
        peer_cidrs,
        protected: res.protected.clone(),
        nodes,
        rules: None,
        blast_radius,
        duration: humantime::format_duration(verdict.duration).to_string(),
        warnings,
    };
    (plan, res)
}
