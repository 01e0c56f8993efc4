//! Dry runs in a cluster, node side. The API's controller plans a `spec.dryRun` NetworkFault
//! from the cluster's pods (`status.plan`: targets and peers per node, the guards it would
//! trip); the rule count needs each node's own compiler (its Service ranges, its local pods),
//! so each node agent that hosts a target or a peer of it plans it with [`Core::plan`] (the
//! code of `faultctl inject --dry-run` on one host) and writes `status.nodes.<node>.dryRun`
//! (the rules it would install, what it would refuse) under a field manager of its own, once
//! per generation of the object. Nothing is applied: node agents never take a dry run into
//! their datapath ([`super::node`]).
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use kube::{
    Api, Client, ResourceExt as _,
    api::{Patch, PatchParams},
};

use super::crd::{NetworkFault, NodeDryRun};
use crate::{api::lock, core::Core};

/// The generation of each dry run this node has answered (by fault key).
#[derive(Debug, Default)]
pub struct Answered(BTreeMap<String, i64>);

/// Plans each dry run among `objects` not answered yet for its generation, and writes the
/// answers of this node (`node`). A node with none of its targets or peers does not answer.
pub async fn answer(
    client: &Client,
    node: &str,
    core: &Mutex<Core>,
    objects: &[Arc<NetworkFault>],
    answered: &mut Answered,
) {
    for nf in objects.iter().filter(|nf| nf.spec.dry_run) {
        let key = nf.key();
        let generation = nf.metadata.generation.unwrap_or_default();
        let in_object = (nf.status.as_ref())
            .and_then(|s| s.nodes.get(node))
            .and_then(|n| n.dry_run.as_ref())
            .is_some_and(|d| d.generation == generation);
        if in_object || answered.0.get(&key) == Some(&generation) {
            continue;
        }
        answered.0.insert(key.clone(), generation);
        if let Some(plan) = plan_here(core, nf, node, generation) {
            tracing::info!(fault = %key, rules = ?plan.rules, "dry run planned on this node");
            write(client, node, nf, &plan).await;
        }
    }
    answered
        .0
        .retain(|k, _| objects.iter().any(|o| &o.key() == k));
}

/// This node's plan of `nf`, or `None` when it hosts none of its targets and peers (or the
/// spec does not convert: the controller reports that).
fn plan_here(
    core: &Mutex<Core>,
    nf: &NetworkFault,
    node: &str,
    generation: i64,
) -> Option<NodeDryRun> {
    let spec = nf.fault_spec().ok()?;
    let plan = lock(core).plan(&spec);
    match plan {
        Ok(plan) if plan.nodes.contains_key(node) => Some(NodeDryRun {
            generation,
            rules: plan.rules,
            refusals: plan.refusals,
        }),
        Ok(_) => None,
        Err(e) => Some(NodeDryRun {
            generation,
            rules: None,
            refusals: vec![e.to_string()],
        }),
    }
}

async fn write(client: &Client, node: &str, nf: &NetworkFault, plan: &NodeDryRun) {
    let api: Api<NetworkFault> =
        Api::namespaced(client.clone(), &nf.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "faultline.dev/v1alpha1", "kind": "NetworkFault",
        "status": {"nodes": {node: {"dryRun": plan}}}
    });
    let manager = format!("faultline-node-{node}-dry-run");
    if let Err(e) = api
        .patch_status(
            &nf.name_any(),
            &PatchParams::apply(&manager).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        tracing::warn!(fault = %nf.key(), error = %e, "cannot write this node's dry-run plan");
    }
}
