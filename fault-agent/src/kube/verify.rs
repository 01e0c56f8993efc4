//! Verify in a cluster: the API asks, the node agents probe. `POST /v1/faults/{id}/verify` on
//! the cluster API sets the annotation [`VERIFY_REQUEST`] (a new request id) on the
//! `NetworkFault`; every node agent that applied the fault probes it from its own senders
//! ([`crate::verify`], the same probes as a single host) and writes the report to
//! `status.nodes.<node>.verification` under a field manager of its own; the API waits for an
//! answer from each node that applied the fault and merges them (pairs of all nodes, one
//! outcome over them).
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fault_api::{Outcome, Verification};
use jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt as _,
    api::{Patch, PatchParams},
};

use super::crd::{NetworkFault, NodeVerification, VERIFY_REQUEST};
use crate::{
    core::{Core, NodeReport},
    error::AgentError,
};

/// How long the API waits for the node agents' answers at most.
pub const ANSWER_WAIT: Duration = Duration::from_secs(15);

/// A node's answer when it could not probe: an empty report, and why.
fn failed(fault_id: &str, reason: String) -> (Verification, Option<String>) {
    (unprobed(fault_id, reason.clone()), Some(reason))
}

/// A report that probed nothing, saying why.
fn unprobed(fault_id: &str, reason: String) -> Verification {
    Verification {
        fault_id: fault_id.to_owned(),
        outcome: Outcome::NotVerified,
        reason: Some(reason),
        pairs: vec![],
        probe_packets: 0,
        probe_mark: crate::verify::probe::PROBE_MARK,
        took_ms: 0,
    }
}

/// Node side: the request each fault's verification last answered (by fault key).
#[derive(Debug, Default)]
pub struct Answered(BTreeMap<String, String>);

/// Node side: starts the probes of each fault this node applied whose verify request it has
/// not answered yet (each on its own task; the answer is written when the probes end).
pub fn answer(
    client: &Client,
    node: &str,
    core: &Arc<Mutex<Core>>,
    objects: &[Arc<NetworkFault>],
    reports: &[NodeReport],
    answered: &mut Answered,
) {
    for nf in objects {
        let Some(request) = nf.annotations().get(VERIFY_REQUEST).cloned() else {
            continue;
        };
        let key = nf.key();
        let applied = reports.iter().any(|r| r.id == key && r.applied);
        let done = answered.0.get(&key) == Some(&request)
            || nf
                .status
                .as_ref()
                .and_then(|s| s.nodes.get(node))
                .and_then(|n| n.verification.as_ref())
                .is_some_and(|v| v.request == request);
        if !applied || done {
            continue;
        }
        answered.0.insert(key.clone(), request.clone());
        let (client, node, core) = (client.clone(), node.to_owned(), core.clone());
        let (ns, name) = (nf.namespace().unwrap_or_default(), nf.name_any());
        tokio::spawn(async move {
            let k = key.clone();
            let (report, error) = match tokio::task::spawn_blocking(move || probe(&core, &k)).await
            {
                Ok(Ok(v)) => (v, None),
                Ok(Err(e)) => failed(&key, format!("node {node}: {e}")),
                Err(e) => failed(&key, format!("node {node}: probe task failed: {e}")),
            };
            tracing::info!(fault = %key, outcome = %report.outcome, pairs = report.pairs.len(), "verify request answered");
            let answer = NodeVerification {
                request,
                report,
                error,
            };
            write(&client, &node, &ns, &name, answer).await;
        });
    }
    answered
        .0
        .retain(|k, _| objects.iter().any(|o| &o.key() == k));
}

/// Plans under the core's lock, probes without it.
fn probe(core: &Mutex<Core>, key: &str) -> Result<Verification, AgentError> {
    let (fault, plan, caps) = {
        let c = core.lock().unwrap_or_else(|p| p.into_inner());
        let fault = c.get(key)?;
        let plan = crate::verify::plan::plan(&fault, c.pods())?;
        (fault, plan, c.capabilities().clone())
    };
    let v = crate::verify::run(&fault, &plan, &caps);
    core.lock()
        .unwrap_or_else(|p| p.into_inner())
        .recorder()
        .verify_probes(v.probe_packets);
    Ok(v)
}

async fn write(client: &Client, node: &str, ns: &str, name: &str, answer: NodeVerification) {
    let api: Api<NetworkFault> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": "faultline.dev/v1alpha1", "kind": "NetworkFault",
        "status": {"nodes": {node: {"verification": answer}}}
    });
    let manager = format!("faultline-node-{node}-verify");
    if let Err(e) = api
        .patch_status(
            name,
            &PatchParams::apply(&manager).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        tracing::warn!(fault = %name, error = %e, "cannot write the verify answer");
    }
}

/// API side: asks the node agents to verify `nf` and merges their answers. Errors: 409 when
/// no node has applied it; 502 when the request cannot be written.
pub async fn request(
    client: &Client,
    nf: &NetworkFault,
    id: &str,
) -> Result<Verification, AgentError> {
    let ns = nf.namespace().unwrap_or_default();
    let api: Api<NetworkFault> = Api::namespaced(client.clone(), &ns);
    let request = Timestamp::now().as_nanosecond().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {VERIFY_REQUEST: request}}});
    api.patch(
        &nf.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(super::backend::kube_error)?;
    let start = Instant::now();
    loop {
        let now = api
            .get(&nf.name_any())
            .await
            .map_err(super::backend::kube_error)?;
        let nodes = now.status.map(|s| s.nodes).unwrap_or_default();
        let expected: Vec<&String> = nodes
            .iter()
            .filter(|(_, n)| n.applied)
            .map(|(k, _)| k)
            .collect();
        if expected.is_empty() {
            return Err(AgentError::Conflict(format!(
                "fault {id}: no node agent has applied it, so none can probe it"
            )));
        }
        let answers: BTreeMap<&String, &NodeVerification> = nodes
            .iter()
            .filter_map(|(k, n)| Some((k, n.verification.as_ref()?)))
            .filter(|(_, v)| v.request == request)
            .collect();
        let missing: Vec<&String> = expected
            .iter()
            .copied()
            .filter(|k| !answers.contains_key(k))
            .collect();
        if missing.is_empty() || start.elapsed() >= ANSWER_WAIT {
            return Ok(merge(id, &answers, &missing, start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One report from the nodes' answers: their pairs, one outcome over all of them; a node that
/// could not probe, or did not answer, makes it `not verified`, naming the node.
fn merge(
    id: &str,
    answers: &BTreeMap<&String, &NodeVerification>,
    missing: &[&String],
    took: Duration,
) -> Verification {
    let pairs: Vec<_> = answers
        .values()
        .flat_map(|v| v.report.pairs.clone())
        .collect();
    let (mut outcome, mut reason) = crate::verify::judge::overall(&pairs);
    let failed: Vec<&str> = answers
        .values()
        .filter_map(|v| v.error.as_deref())
        .collect();
    if !missing.is_empty() {
        outcome = Outcome::NotVerified;
        let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        reason = Some(format!(
            "node agent(s) {} did not answer within {} s",
            names.join(", "),
            ANSWER_WAIT.as_secs()
        ));
    } else if !failed.is_empty() {
        outcome = Outcome::NotVerified;
        reason = Some(failed.join("; "));
    }
    Verification {
        fault_id: id.to_owned(),
        outcome,
        reason,
        pairs,
        probe_packets: answers.values().map(|v| v.report.probe_packets).sum(),
        probe_mark: crate::verify::probe::PROBE_MARK,
        took_ms: took.as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_did_not_answer_makes_the_merge_not_verified() {
        let (a, b) = ("node-a".to_owned(), "node-b".to_owned());
        let none = NodeVerification {
            request: "1".into(),
            report: unprobed("x", "no pair".into()),
            error: None,
        };
        let answers = BTreeMap::from([(&a, &none)]);
        let v = merge("ns/f", &answers, &[&b], Duration::from_secs(15));
        assert_eq!(v.outcome, Outcome::NotVerified);
        assert!(v.reason.unwrap().contains("node-b"));
        assert_eq!(v.fault_id, "ns/f");
        let (report, error) = failed("x", "node node-a: fault x is Pending".into());
        let failed = NodeVerification {
            request: "1".into(),
            report,
            error,
        };
        let answers = BTreeMap::from([(&a, &failed)]);
        let v = merge("ns/f", &answers, &[], Duration::ZERO);
        assert_eq!(v.outcome, Outcome::NotVerified);
    }
}
